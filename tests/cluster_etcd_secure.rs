//! A cluster on an etcd that wants TLS, client certificates and a password: a real etcd
//! (see `common::etcd`) serving only `https://`, checking client certificates, with auth
//! enabled. A node that presents the CA, its certificate and the right password is elected
//! leader; a node with a wrong password, without a client certificate or without TLS never
//! connects, and says why (`Node::etcd_error`); a client without the password cannot read
//! the cluster's keys.

use crate::common::etcd::Etcd;
use riffle::cluster::EtcdTls;
use riffle::cluster::{Node, Secret};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"cluster etcd secure test";
const PASSWORD: &str = "etcd password of the test";

fn node(name: &str, url: &str) -> riffle::cluster::NodeBuilder {
    Node::builder()
        .name(name)
        .secret(Secret::new(SECRET).expect("secret"))
        .etcd([url])
        .lease_ttl(Duration::from_secs(1))
}

/// Polls `node.etcd_error()` until it says something (there is no event for "not
/// connected yet"); panics after 20 s.
fn refusal(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = node.etcd_error() {
            return e;
        }
        assert!(Instant::now() < deadline, "no etcd error reported in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_nodes_with_the_ca_their_certificate_and_the_password_use_a_secured_etcd() {
    let Some(secure) = Etcd::start_secure() else {
        return;
    };
    secure.enable_auth(PASSWORD);
    let url = secure.etcd.url.clone();
    assert!(url.starts_with("https://"), "{url}");
    let full = || {
        EtcdTls::from_files(
            &secure.pem("ca.pem"),
            Some((&secure.pem("client.pem"), &secure.pem("client.key"))),
        )
        .expect("pem files")
    };

    // The credentials given before the endpoints (the other nodes give them after).
    let good = Node::builder()
        .name("n1")
        .secret(Secret::new(SECRET).expect("secret"))
        .etcd_tls(full())
        .etcd_auth("root", PASSWORD)
        .etcd([url.as_str()])
        .lease_ttl(Duration::from_secs(1))
        .start()
        .expect("n1 starts");
    assert!(
        good.wait_leads(Duration::from_secs(20)).is_some(),
        "the node with the right credentials is elected; etcd error: {:?}",
        good.etcd_error()
    );
    assert_eq!(good.etcd_error(), None);

    let wrong = node("n2", &url)
        .etcd_tls(full())
        .etcd_auth("root", "not the password")
        .start()
        .expect("n2 starts");
    let why = refusal(&wrong);
    assert!(why.to_lowercase().contains("auth"), "wrong password: {why}");
    assert_eq!(wrong.leads(), None);

    let no_cert = node("n3", &url)
        .etcd_tls(EtcdTls::from_files(&secure.pem("ca.pem"), None).expect("ca"))
        .etcd_auth("root", PASSWORD)
        .start()
        .expect("n3 starts");
    let why = refusal(&no_cert);
    assert_eq!(no_cert.leads(), None, "without a client certificate: {why}");

    let plain = node("n4", &url.replacen("https://", "http://", 1))
        .etcd_auth("root", PASSWORD)
        .start()
        .expect("n4 starts");
    let why = refusal(&plain);
    assert_eq!(plain.leads(), None, "without TLS: {why}");

    // A client with TLS and a certificate but no password cannot read the cluster's keys.
    let tls = secure.client_tls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let anonymous = rt.block_on(async {
        let options = etcd_client::ConnectOptions::new().with_tls(tls);
        let mut c = etcd_client::Client::connect([url.as_str()], Some(options)).await?;
        let opts = etcd_client::GetOptions::new().with_prefix();
        c.get("/riffle/", Some(opts)).await
    });
    match anonymous {
        Ok(r) => panic!("read {} keys without the password", r.kvs().len()),
        Err(e) => println!("a client without the password: {e}"),
    }
    for n in [plain, no_cert, wrong, good] {
        n.shutdown();
    }
}

#[test]
fn etcd_credentials_without_endpoints_are_refused_and_a_password_never_printed() {
    let tls = || EtcdTls {
        ca_pem: Vec::new(),
        identity: None,
        domain: None,
    };
    let alone = Node::builder()
        .name("n1")
        .secret(Secret::new(SECRET).expect("secret"))
        .etcd_auth("root", PASSWORD)
        .etcd_tls(tls())
        .start();
    match alone {
        Err(riffle::cluster::NodeError::Config(why)) => assert!(why.contains("etcd"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a node started with etcd credentials and no etcd"),
    }
    let auth = riffle::cluster::EtcdAuth {
        user: "root".into(),
        password: PASSWORD.into(),
    };
    let debug = format!("{auth:?}");
    assert!(debug.contains("root"), "{debug}");
    assert!(
        !debug.contains(PASSWORD),
        "the password is never printed: {debug}"
    );
}
