"""Local infrastructure: the Kafka-protocol broker (Tansu) and the chain (anvil), for tests and `datacoop up`."""
