# The worker image: a release build on the same toolchain as CI, run as an
# unprivileged user on a slim base with CA certificates for the push services.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pushq-worker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pushq-worker /usr/local/bin/pushq-worker
USER nobody
ENV PUSHQ_HTTP_ADDR=0.0.0.0:9464 PUSHQ_LOG_FORMAT=json
EXPOSE 9464
ENTRYPOINT ["pushq-worker"]
CMD ["run"]
