# meterbook's runtime image: the Python exporter's container contract with meterbook inside.
# It loops (a cycle every PROCESSING_INTERVAL_SECONDS, 300 by default), answers GET/HEAD /health and
# /health/ on HEALTHCHECK_PORT (8080), reads the predecessor's variables, and keeps the ledger in the
# volume /var/lib/meterbook (the durable state is on S3; the volume only saves a download per start).
#
# The binary comes from the build context, built on the host (see README, "Deploy"):
#   cargo build --release --locked --bin meterbook && cp target/release/meterbook .
#   podman build --format docker -t meterbook:0.1.0 .      (or: docker build -t meterbook:0.1.0 .)
# README "Deploy" also shows a multi-stage variant that compiles inside the build, for your own CI.
FROM debian:bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="meterbook" \
      org.opencontainers.image.description="A usage ledger for Omnistrate exports, reported to Clazar exactly once" \
      org.opencontainers.image.source="https://github.com/meterbook/meterbook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# CA certificates for S3 and Clazar over TLS; nothing else is needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/meterbook \
      --shell /usr/sbin/nologin meterbook \
 && mkdir -p /var/lib/meterbook \
 && chown meterbook:meterbook /var/lib/meterbook

COPY --chmod=0755 meterbook /usr/local/bin/meterbook

ENV METERBOOK_LEDGER=/var/lib/meterbook/meterbook.sqlite \
    PROCESSING_INTERVAL_SECONDS=300 \
    HEALTHCHECK_PORT=8080

VOLUME /var/lib/meterbook
WORKDIR /var/lib/meterbook
USER meterbook:meterbook
EXPOSE 8080

# `meterbook health` asks the running loop's /health (the image has no curl).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["meterbook", "health"]

ENTRYPOINT ["meterbook"]
CMD ["run"]
