"""Queue consumers: the Celery list in Redis and the Kafka topic."""
