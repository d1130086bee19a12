"""Jobs: submitting, running, deciding and settling each attempt, and what surrounds them
(gates, reconciliation, webhooks, limits, costs, reuse)."""
