"""The stack Freshwire runs on: configs for Debezium and Kafka Connect, and the scripts that start them."""
