"""What every Refinery process shares: settings, the task file, event schemas, Kafka I/O."""
