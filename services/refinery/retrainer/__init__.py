"""The retrainer: from feedback to a fine-tuned challenger, evaluated and promoted via MLflow."""
