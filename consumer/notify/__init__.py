"""`tdm-alerts notify`: the alert topic's events delivered to Alertmanager, PagerDuty and signed
webhooks, each the way it expects, at least once (README "Paging")."""
