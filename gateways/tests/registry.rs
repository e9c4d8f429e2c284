//! The registry against the real schema: every change and every refusal.

use gateways::registry::{self, RegistryError};
use sqlx::PgPool;

fn names(devices: &[&str]) -> Vec<String> {
    devices.iter().map(|d| d.to_string()).collect()
}

async fn events(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM system_events WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn an_added_gateway_is_known_by_its_secret_alone(pool: PgPool) {
    let secret = registry::add(
        &pool,
        "iotctl",
        "pi-line-a",
        &names(&["furnace-01", "press-01"]),
    )
    .await
    .unwrap();
    let stored = registry::credentials(&pool, "pi-line-a")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.enabled);
    assert!(stored.hash.matches(secret.expose()));
    assert!(!stored.hash.matches("0".repeat(64).as_str()));
    let raw: String = sqlx::query_scalar("SELECT secret_hash FROM gateways")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !raw.contains(secret.expose()),
        "the secret itself is never stored"
    );

    let listed = registry::list(&pool).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].devices, names(&["furnace-01", "press-01"]));
    assert_eq!(events(&pool, "gateway_added").await, 1);
    assert!(registry::credentials(&pool, "nobody")
        .await
        .unwrap()
        .is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_requests_are_refused_by_name_and_change_nothing(pool: PgPool) {
    registry::add(&pool, "iotctl", "pi-a", &[]).await.unwrap();
    match registry::add(&pool, "iotctl", "pi-a", &[]).await {
        Err(RegistryError::Exists(id)) => assert_eq!(id, "pi-a"),
        other => panic!("a second add of pi-a: {other:?}"),
    }
    match registry::add(&pool, "iotctl", "pi/a", &[]).await {
        Err(e @ RegistryError::InvalidId { .. }) => assert!(e.to_string().contains("'/'"), "{e}"),
        other => panic!("an id with a slash: {other:?}"),
    }
    match registry::add(&pool, "iotctl", "pi-b", &names(&["furnace-01", "kiln-9"])).await {
        Err(e @ RegistryError::UnknownDevices(_)) => {
            assert!(e.to_string().contains("kiln-9"), "{e}");
            assert!(!e.to_string().contains("furnace-01"), "{e}");
        }
        other => panic!("an unknown device: {other:?}"),
    }
    assert!(
        registry::credentials(&pool, "pi-b")
            .await
            .unwrap()
            .is_none(),
        "a refused add leaves no gateway behind"
    );
    for result in [
        registry::rotate(&pool, "iotctl", "ghost").await.map(|_| ()),
        registry::set_enabled(&pool, "iotctl", "ghost", false).await,
        registry::assign(&pool, "iotctl", "ghost", &[])
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(RegistryError::Unknown(ref id)) if id == "ghost"),
            "{result:?}"
        );
    }
    assert_eq!(events(&pool, "gateway_added").await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn rotation_disabling_and_assignment_take_effect(pool: PgPool) {
    let old = registry::add(&pool, "iotctl", "pi-a", &names(&["furnace-01"]))
        .await
        .unwrap();
    registry::add(&pool, "iotctl", "pi-b", &[]).await.unwrap();

    let new = registry::rotate(&pool, "iotctl", "pi-a").await.unwrap();
    let stored = registry::credentials(&pool, "pi-a").await.unwrap().unwrap();
    assert!(stored.hash.matches(new.expose()));
    assert!(
        !stored.hash.matches(old.expose()),
        "the old secret stops working"
    );

    registry::set_enabled(&pool, "iotctl", "pi-a", false)
        .await
        .unwrap();
    assert!(
        !registry::credentials(&pool, "pi-a")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    registry::set_enabled(&pool, "iotctl", "pi-a", true)
        .await
        .unwrap();
    assert!(
        registry::credentials(&pool, "pi-a")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );

    let moved = registry::assign(
        &pool,
        "iotctl",
        "pi-b",
        &names(&["furnace-01", "press-01", "press-01"]),
    )
    .await
    .unwrap();
    assert_eq!(moved, vec![("furnace-01".to_owned(), "pi-a".to_owned())]);
    let listed = registry::list(&pool).await.unwrap();
    assert_eq!(
        listed[0].devices,
        Vec::<String>::new(),
        "furnace-01 left pi-a"
    );
    assert_eq!(listed[1].devices, names(&["furnace-01", "press-01"]));
    for kind in [
        "gateway_rotated",
        "gateway_disabled",
        "gateway_enabled",
        "gateway_assigned",
    ] {
        assert_eq!(events(&pool, kind).await, 1, "{kind}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_devices_keys_are_its_gateways_and_a_rotation_keeps_the_one_before(pool: PgPool) {
    let first = registry::add(&pool, "iotctl", "pi-a", &names(&["furnace-01"]))
        .await
        .unwrap();
    let keys = registry::device_keys(&pool, "furnace-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.gateway, "pi-a");
    assert_eq!(keys.key, Some(first.frame_key()));
    assert_eq!(keys.previous, None);
    assert!(registry::device_keys(&pool, "press-01")
        .await
        .unwrap()
        .is_none());

    let second = registry::rotate(&pool, "iotctl", "pi-a").await.unwrap();
    let keys = registry::device_keys(&pool, "furnace-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.key, Some(second.frame_key()));
    let (previous, replaced_at) = keys.previous.clone().unwrap();
    assert_eq!(previous, first.frame_key());
    let rotated = registry::list(&pool).await.unwrap()[0].rotated_at;
    assert_eq!(replaced_at, rotated);
    // All at once, as the bridge refreshes its cache: the same keys, assigned devices only.
    assert_eq!(
        registry::all_device_keys(&pool).await.unwrap(),
        vec![("furnace-01".to_owned(), keys)]
    );
}
