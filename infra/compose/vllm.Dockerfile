# vLLM with refinery's plugin: replicas resolve refinery-model-vN from the MLflow registry.
#   docker build -f infra/compose/vllm.Dockerfile -t refinery-vllm .
# The refinery package goes in without its dependencies: the plugin needs only the
# standard library and vLLM (refinery/vllm_plugin).
FROM vllm/vllm-openai:v0.11.0
WORKDIR /src
COPY pyproject.toml README.md refinery.yaml ./
COPY schemas ./schemas
COPY tasks ./tasks
COPY infra/kafka/log4j2.properties ./infra/kafka/log4j2.properties
COPY services ./services
RUN pip install --no-cache-dir --no-deps . && rm -rf /src
WORKDIR /
ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 HF_HUB_OFFLINE=1
ENTRYPOINT []
