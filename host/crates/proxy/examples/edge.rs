//! The proxy alone, as `orca server` runs it (the same `Proxy`, default `ProxyConfig`,
//! default worker count, HTTP and HTTPS listeners), in front of a fixed routing table: for
//! benchmarking the request path without a release build of the whole server
//! (`ORCA_BENCH_PROXY=edge bench/proxy.sh`).
//!
//!   edge HTTP_ADDR HTTPS_ADDR CERT_PEM KEY_PEM TLS_DOMAIN DOMAIN=BACKEND...
//!
//! `TLS_DOMAIN` is served with the certificate; each `DOMAIN=BACKEND` routes one domain to
//! one backend address. Runs until killed. `ORCA_EDGE_UPSTREAM=spawned` or `=pool` picks
//! [`UpstreamConnections::PerClientSpawned`] or [`UpstreamConnections::PoolOnly`] instead of
//! the default, for comparisons.

use std::net::SocketAddr;
use std::sync::Arc;

use orca_proxy::{
    Backend, Proxy, ProxyConfig, ProxyMetrics, Route, RouteTable, Routes, UpstreamConnections,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        return Err(
            "usage: edge HTTP_ADDR HTTPS_ADDR CERT_PEM KEY_PEM TLS_DOMAIN DOMAIN=BACKEND...".into(),
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let routes = Routes::new();
    let mut table = RouteTable::new();
    for route in &args[5..] {
        let (domain, backend) = route
            .split_once('=')
            .ok_or_else(|| format!("{route:?}: expected DOMAIN=BACKEND"))?;
        let addr: SocketAddr = backend.parse()?;
        table.insert(
            domain,
            Route {
                service: format!("bench/{domain}"),
                backends: vec![Backend::new(format!("{domain}-0"), addr)],
            },
        );
    }
    routes.swap(table);
    let upstreams = match std::env::var("ORCA_EDGE_UPSTREAM").as_deref() {
        Ok("spawned") => UpstreamConnections::PerClientSpawned,
        Ok("pool") => UpstreamConnections::PoolOnly,
        _ => UpstreamConnections::PerClient,
    };
    let proxy = Proxy::new(ProxyConfig::default(), routes, ProxyMetrics::new())
        .with_upstream_connections(upstreams);
    let key = orca_proxy::certified_key(
        &std::fs::read_to_string(&args[2])?,
        &std::fs::read_to_string(&args[3])?,
    )?;
    proxy.certificates().insert(&args[4], Arc::new(key));
    let http = TcpListener::bind(&args[0]).await?;
    let https = TcpListener::bind(&args[1]).await?;
    proxy
        .serve_with_tls(http, https, std::future::pending())
        .await?;
    Ok(())
}
