"""webhook service: records bus events in an outbox and delivers them to the sites' endpoints, signed
by Standard Webhooks, with retries, in order per endpoint, and a delivery log."""
