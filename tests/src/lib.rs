//! Shared pieces of crated's tests and test plugins: the messages of the test
//! service `crated.test.Echo`, written with prost derives so no protoc run
//! is needed. The integration tests use the same types as clients. [`images`]
//! builds the OCI and docker image archives the image tests import;
//! [`registry`] runs a real registry, and a fault-injecting proxy, for pull
//! and push tests; [`transfer_client`] drives the Transfer service;
//! [`misbehave`] names what the misbehaving test plugins and their tests share;
//! [`bundle`] says which plugins the bundled library holds;
//! [`large_store`] fills a store for measuring a garbage collection;
//! [`kube_proxy`] is a fake Kubernetes API server for driving the CRI
//! stream server with kubectl; [`cgroups`] removes what tests' containers
//! leave in the cgroup tree.

pub mod bundle;
pub mod cgroups;
pub mod images;
pub mod kube_proxy;
pub mod large_store;
pub mod misbehave;
pub mod registry;
pub mod stock;
pub mod transfer_client;

/// The test service's name.
pub const ECHO_SERVICE: &str = "crated.test.Echo";
/// The service of the plugin that calls Echo in process.
pub const RELAY_SERVICE: &str = "crated.test.Relay";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    /// For `Repeat`: how many responses to send.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(string, tag = "1")]
    pub text: String,
    /// The `containerd-namespace` the call carried.
    #[prost(string, tag = "2")]
    pub namespace: String,
}

/// The path of a method of the echo service.
pub fn echo_method(name: &str) -> String {
    format!("/{ECHO_SERVICE}/{name}")
}
