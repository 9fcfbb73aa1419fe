"""Starting, checking and stopping the real processes Refinery runs on (kafka, mlflow, vllm)."""
