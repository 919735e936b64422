//! The engine's allocator: pooling when the pool can be reserved, on-demand
//! (with a warning) when it cannot, and components run on both.

mod common;

use common::{get, load, runtime_with, within};
use skiff_runtime::{Allocator, EngineConfig, RuntimeConfig, Sandbox};

#[tokio::test]
async fn falls_back_to_on_demand_when_the_pool_cannot_be_reserved() {
    within(60, "allocator fallback", async {
        let pooled = runtime_with(RuntimeConfig::default());
        assert_eq!(pooled.allocator(), Allocator::Pooling);

        // 100,000 slots of 4 GiB reservations each is more address space
        // than x86-64 user space has, so reserving the pool must fail.
        let huge = runtime_with(RuntimeConfig {
            engine: EngineConfig {
                pool_instances: 100_000,
                ..EngineConfig::default()
            },
            ..RuntimeConfig::default()
        });
        assert_eq!(huge.allocator(), Allocator::OnDemand);

        for runtime in [pooled, huge] {
            let hello = load(&runtime, skiff_guests::HELLO);
            let sandbox = Sandbox::default().env("POD_NAME", "either");
            assert_eq!(
                get(&hello, "/", &sandbox).await.unwrap().1,
                "Hello from either!\n"
            );
        }
    })
    .await;
}
