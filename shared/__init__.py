"""Code the four services share: configuration, logging, the bus and its wire schemas, MongoDB
access, the WeChat client, sealing and retry policies. Nothing here imports a service."""
