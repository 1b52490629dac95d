# CPU image: `docker build -t openlora .` The GPU image is Dockerfile.cuda. Both run as the
# unprivileged user `openlora` (uid 10001); the hub cache (HF_HOME) is /var/cache/openlora/hf.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin openlora

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/openlora openlora \
    && mkdir -p /var/cache/openlora/hf && chown -R 10001:10001 /var/cache/openlora
COPY --from=build /src/target/release/openlora /usr/local/bin/openlora
COPY scripts/fetch-model.sh /opt/openlora/fetch-model.sh
COPY adapters /opt/openlora/adapters
ENV HF_HOME=/var/cache/openlora/hf
USER 10001:10001
EXPOSE 8000
# Model: a hub id (`--model org/name`, `--model org/name:file.gguf`), or mount a .gguf or HF folder
# at /model.
ENTRYPOINT ["openlora", "serve", "--host", "0.0.0.0", "--port", "8000", "--adapters-dir", "/opt/openlora/adapters"]
CMD ["--model", "/model"]
