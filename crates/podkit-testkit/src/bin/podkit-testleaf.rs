//! `podkit-testleaf`: the test kit's leaf server as a program, for benchmarks.

use clap::Parser;
use podkit_testkit::leaf::{LeafOptions, serve};

fn main() {
    let opts = LeafOptions::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        if let Some(path) = &opts.addr_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, addr.to_string()).expect("write addr file");
            std::fs::rename(&tmp, path).expect("rename addr file");
        }
        serve(listener, opts).await;
    });
}
