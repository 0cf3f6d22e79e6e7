# Multi-stage build: compile in the official Rust image, run on slim Debian as non-root.
# (Not built in this project's CI: the build machines have no Docker engine.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
RUN cargo build --release --locked --bin caracal

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /opt/caracal caracal
WORKDIR /opt/caracal
COPY --from=build /src/target/release/caracal /usr/local/bin/caracal
COPY conf ./conf
USER caracal
# http, https, admin, cluster mesh (TCP), multicast membership (UDP)
EXPOSE 8080 8443 9090 4000 45564/udp
ENTRYPOINT ["caracal", "--config", "/opt/caracal/conf/caracal.toml"]
