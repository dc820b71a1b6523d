//! Checks the moto harness itself: the server starts, the fixture images load, and the
//! helpers see exactly what is tagged.

mod common;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use common::{AMI_AMD64_NEWEST, AMI_AMD64_OLDER, AMI_ARM64, CLUSTER_TAG, DEBIAN_OWNER, Moto};

#[tokio::test]
async fn fixture_images_and_tag_helpers() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;

    // The fixture's Debian 12 amd64 images, newest first by creation date.
    let images = ec2
        .describe_images()
        .owners(DEBIAN_OWNER)
        .filters(
            Filter::builder()
                .name("name")
                .values("debian-12-amd64-*")
                .build(),
        )
        .send()
        .await
        .expect("DescribeImages")
        .images
        .unwrap_or_default();
    let mut found: Vec<(String, String)> = images
        .into_iter()
        .map(|i| {
            (
                i.creation_date.unwrap_or_default(),
                i.image_id.unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found.reverse();
    let ids: Vec<&str> = found.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, [AMI_AMD64_NEWEST, AMI_AMD64_OLDER]);

    let arm = ec2
        .describe_images()
        .owners(DEBIAN_OWNER)
        .filters(
            Filter::builder()
                .name("architecture")
                .values("arm64")
                .build(),
        )
        .send()
        .await
        .expect("DescribeImages arm64")
        .images
        .unwrap_or_default();
    assert_eq!(arm.len(), 1);
    assert_eq!(arm[0].image_id(), Some(AMI_ARM64));

    // A pre-existing subnet is untagged, so it does not count as the cluster's.
    let (vpc_id, subnet_id) = moto.make_subnet("10.70.0.0/16", "10.70.1.0/24").await;
    assert!(vpc_id.starts_with("vpc-") && subnet_id.starts_with("subnet-"));
    assert_eq!(moto.count_tagged("smoke").await, 0);

    // An instance launched with the cluster tag is seen, and stops counting once terminated.
    let tag = Tag::builder().key(CLUSTER_TAG).value("smoke").build();
    let launched = ec2
        .run_instances()
        .image_id(AMI_AMD64_NEWEST)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag)
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let instance_id = launched.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string();

    let tagged = moto.instances_tagged("smoke").await;
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].instance_id(), Some(instance_id.as_str()));
    assert_eq!(tagged[0].private_ip_address(), Some("10.70.1.4"));
    assert_eq!(
        moto.tagged("smoke").await,
        [("instance", instance_id.clone())]
    );
    assert_eq!(moto.count_tagged("other").await, 0);

    ec2.terminate_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .expect("TerminateInstances");
    assert_eq!(moto.count_tagged("smoke").await, 0);

    // env() points a spawned pgform at this server.
    let env = moto.env();
    assert!(env.contains(&("AWS_ENDPOINT_URL".to_string(), moto.endpoint.clone())));
}
