"""tdm-alerts' edge: Kafka in and out, metrics, logging, settings and the command line."""
