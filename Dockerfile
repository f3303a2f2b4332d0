# syntax=docker/dockerfile:1
#
# prism-server in a container.
#
#   docker build -t prism-server:latest .              # GPU-capable (cuBLAS and NVRTC inside)
#   docker build --target cpu -t prism-server:cpu .    # CPU only, without the CUDA libraries
#   docker run --rm -p 8000:8000 -p 8001:8001 prism-server:latest               # built-in models
#   docker run --rm --gpus all -p 8000:8000 -v $PWD/models:/models:ro \
#     -v $PWD/prism.toml:/etc/prism/prism.toml:ro prism-server:latest --config /etc/prism/prism.toml
#
# What the GPU path needs at run time, and where it comes from:
# * libcuda (the driver API) and libnvidia-ml (NVML): from the host's driver, put into
#   the container by the NVIDIA Container Toolkit (`--gpus`, or the Kubernetes device
#   plugin), as NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES below ask.
# * NVRTC and cuBLAS/cuBLASLt: not part of the driver. Prism opens them at run time
#   (cudarc, dynamic loading, built for CUDA 13.0: libnvrtc.so.13, libcublas.so.13), so
#   the image carries them, from NVIDIA's wheels at the versions the test suite compiles
#   every kernel with (tests/cuda/requirements.txt). CUDA 13 needs a host driver of the
#   R580 series or newer; with an older one, or none, replicas serve on the CPU and
#   GET /v2/status says why.

# ---- build: the release binary -------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# cudarc loads CUDA at run time, so the build needs no CUDA toolkit; protox compiles the
# gRPC protos, so no protoc either.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p prism-server \
 && install -D -m 0755 target/release/prism-server /out/prism-server

# ---- the CUDA libraries Prism opens (NVRTC, cuBLAS) -----------------------------------
FROM python:3.12-slim-bookworm AS cuda-libs
RUN pip install --no-cache-dir --no-deps --target /wheels \
      nvidia-cuda-nvrtc==13.0.88 \
      nvidia-cublas==13.0.2.14 \
 && mkdir -p /out \
 && cd /wheels/nvidia/cu13/lib \
 && cp -a libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcublas.so.13 libcublasLt.so.13 /out/

# ---- cpu: the binary alone ------------------------------------------------------------
FROM debian:bookworm-slim AS cpu
COPY --from=build /out/prism-server /usr/local/bin/prism-server
# A fixed, numeric, unprivileged user: Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 prism \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin prism
USER 10001:10001
# REST (V2, OpenAI, /metrics, health) and gRPC (V2).
EXPOSE 8000 8001
# Ready once the models are loaded. No curl in the image: bash's /dev/tcp.
# PRISM_HEALTH_PORT: the REST port, when the arguments move it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${PRISM_HEALTH_PORT:-8000} && printf "GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200 "'
ENTRYPOINT ["/usr/local/bin/prism-server"]
# The embedded default deployment, reachable from outside the container. Arguments given
# to `docker run` (or a pod's `args`) replace these: a deployment file's own addresses
# then apply.
CMD ["--http-addr", "0.0.0.0:8000", "--grpc-addr", "0.0.0.0:8001"]

# ---- gpu (the default target): the binary, NVRTC and cuBLAS ----------------------------
FROM cpu AS gpu
USER root
COPY --from=cuda-libs /out/ /usr/local/lib/prism-cuda/
# On the loader's path for the process and for the NVIDIA hook's own ldconfig run.
RUN echo /usr/local/lib/prism-cuda > /etc/ld.so.conf.d/prism-cuda.conf && ldconfig
USER 10001:10001
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
