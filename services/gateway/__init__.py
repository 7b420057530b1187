"""gateway service: serves the browser (HTTP + WebSocket push) and the mini-program; owns no data."""
