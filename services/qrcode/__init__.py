"""qrcode service: owns login scenes (mint, state machine, expiry) and their mini-program codes."""
