#![allow(clippy::unwrap_used, reason = "test code")]

use spiderpool_schema::{FINALIZER, SpiderIPPoolSpec};

use super::*;

fn pool(name: &str) -> SpiderIPPool {
    SpiderIPPool::new(
        name,
        SpiderIPPoolSpec {
            subnet: "10.0.0.0/24".into(),
            ips: vec!["10.0.0.1-10.0.0.9".into()],
            ..Default::default()
        },
    )
}

fn write(version: Option<&str>, text: &str) -> PoolStatusWrite {
    PoolStatusWrite {
        resource_version: version.map(str::to_owned),
        allocated_ips: Some(text.to_owned()),
        allocated_ip_count: 1,
    }
}

#[tokio::test]
async fn pool_writes_are_compare_and_swap_and_reach_the_cache() {
    let (fake, stores) = FakeApi::new("n1");
    fake.put_pool(pool("p"));
    let read = fake.get_pool("p").await.unwrap().unwrap();
    let version = read.metadata.resource_version.clone();
    let written = fake
        .write_pool_status("p", &write(version.as_deref(), "{}"))
        .await
        .unwrap();
    assert_ne!(written.metadata.resource_version, version);
    assert_eq!(
        stores.pool("p").unwrap().metadata.resource_version,
        written.metadata.resource_version
    );
    // The same stale version again: refused.
    let stale = fake
        .write_pool_status("p", &write(version.as_deref(), "{}"))
        .await;
    assert!(stale.unwrap_err().is_conflict());
    assert!(
        fake.write_pool_status("q", &write(None, "{}"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    // A paused watch delivers later.
    fake.pause_watch();
    let later = fake
        .write_pool_status("p", &write(written.metadata.resource_version.as_deref(), "{}"))
        .await
        .unwrap();
    assert_eq!(
        stores.pool("p").unwrap().metadata.resource_version,
        written.metadata.resource_version
    );
    fake.resume_watch();
    assert_eq!(
        stores.pool("p").unwrap().metadata.resource_version,
        later.metadata.resource_version
    );
}

#[tokio::test]
async fn scripted_faults_refuse_lose_the_answer_or_hang() {
    let (fake, _) = FakeApi::new("n1");
    fake.put_pool(pool("p"));
    fake.fail(CallKind::WritePoolStatus, Fault::Conflict, 1);
    fake.fail(CallKind::WritePoolStatus, Fault::Status(500), 1);
    fake.fail(CallKind::WritePoolStatus, Fault::LoseResponse, 1);
    assert!(
        fake.write_pool_status("p", &write(None, "a"))
            .await
            .unwrap_err()
            .is_conflict()
    );
    let refused = fake.write_pool_status("p", &write(None, "b")).await.unwrap_err();
    assert_eq!(refused.status_code(), Some(500));
    assert_eq!(
        fake.pool("p").unwrap().status.unwrap_or_default().allocated_ips,
        None
    );
    let lost = fake.write_pool_status("p", &write(None, "c")).await.unwrap_err();
    assert_eq!(lost.status_code(), None);
    assert_eq!(
        fake.pool("p").unwrap().status.unwrap().allocated_ips.as_deref(),
        Some("c")
    );
    fake.fail_always(CallKind::GetPool, Fault::Hang);
    let hung = tokio::time::timeout(Duration::from_secs(1), fake.get_pool("p")).await;
    assert!(hung.is_err());
    fake.clear_faults();
    assert!(fake.get_pool("p").await.unwrap().is_some());
    assert_eq!(fake.count(CallKind::WritePoolStatus), 3);
}

#[tokio::test]
async fn endpoints_with_finalizers_are_deleted_once_they_are_removed() {
    let (fake, _) = FakeApi::new("n1");
    let mut ep = SpiderEndpoint {
        metadata: ObjectMeta {
            name: Some("a".into()),
            namespace: Some("ns".into()),
            finalizers: Some(vec![FINALIZER.to_owned()]),
            ..Default::default()
        },
        status: None,
    };
    let created = fake.create_endpoint(&ep).await.unwrap();
    assert!(fake.create_endpoint(&ep).await.unwrap_err().is_already_exists());
    // A replace from a stale read conflicts.
    ep.metadata.resource_version = Some("0".into());
    assert!(fake.replace_endpoint(&ep).await.unwrap_err().is_conflict());
    fake.delete_endpoint("ns", "a", None).await.unwrap();
    assert!(
        fake.endpoint("ns", "a")
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let stale = created.metadata.resource_version.as_deref();
    assert!(
        fake.remove_endpoint_finalizers("ns", "a", stale)
            .await
            .unwrap_err()
            .is_conflict()
    );
    fake.remove_endpoint_finalizers("ns", "a", None).await.unwrap();
    assert!(fake.endpoint("ns", "a").is_none());
}
