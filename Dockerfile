# CPU image. A CUDA variant will build with `--features cuda` on an nvidia/cuda base once the
# cuda feature lands (see the CUDA backend issue).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin openlora

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates python3-pip && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/openlora /usr/local/bin/openlora
COPY scripts/fetch-model.sh /opt/openlora/fetch-model.sh
COPY adapters /opt/openlora/adapters
EXPOSE 8000
# Model: mount a .gguf or HF folder at /model, or fetch the demo model at build time.
ENTRYPOINT ["openlora", "serve", "--host", "0.0.0.0", "--port", "8000", "--adapters-dir", "/opt/openlora/adapters"]
CMD ["--model", "/model"]
