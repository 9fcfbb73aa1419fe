# vLLM with refinery's plugin: replicas resolve refinery-model-vN from the MLflow registry.
#   docker build -f infra/compose/vllm.Dockerfile --target vllm -t refinery-vllm .
# The refinery package goes in without its dependencies: the plugin needs only the
# standard library and vLLM (refinery/vllm_plugin).
FROM vllm/vllm-openai:v0.11.0 AS vllm
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

# The deployer (merged serving, refinery/deployer): merges each LoRA champion into its base
# weights with PEFT and serves them blue/green on vLLM servers it starts from this python.
# It reads the registry (MLflow's client); vLLM brings torch, transformers, httpx and
# pydantic-settings. Versions as in requirements.lock.
#   docker build -f infra/compose/vllm.Dockerfile --target deployer -t refinery-deployer .
FROM vllm AS deployer
RUN pip install --no-cache-dir peft==0.21.2 mlflow-skinny==3.17.2
WORKDIR /var/lib/refinery
ENV REFINERY_VAR_DIR=/var/lib/refinery
CMD ["python3", "-m", "refinery.deployer"]
