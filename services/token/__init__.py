"""token service: owns the WeChat access_token, keeps it fresh, broadcasts it to the other services."""
