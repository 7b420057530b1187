"""Development stand-ins for the outside world: the WeChat API simulator and a simulated phone."""
