# Multi-stage build: compile with the Rust toolchain, ship a slim Debian runtime.
# (Not built in this repository's CI: its machines run no Docker engine.)
FROM rust:1.95-bookworm AS build
# `dist`: fat LTO and one codegen unit, about 5% faster lake queries than `release`
# for about twice the build's CPU time and ~12 GB of memory at the final link (README
# "Build profiles"); `--build-arg PROFILE=release` builds quicker in less memory.
ARG PROFILE=dist
# Distributed lake queries on Ballista ([engine.distributed], README "Lake statements
# on a Ballista cluster"); `--build-arg FEATURES=` leaves them out.
ARG FEATURES=distributed
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --profile "$PROFILE" --locked --features "$FEATURES" --bin sluice \
    && cp "target/$PROFILE/sluice" /src/sluice

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
    && mkdir -p /etc/sluice /var/lib/sluice \
    && chown sluice:sluice /var/lib/sluice
COPY --from=build /src/sluice /usr/local/bin/sluice
COPY conf/docker.toml /etc/sluice/sluice.toml
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 5439
VOLUME ["/var/lib/sluice"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.toml"]
