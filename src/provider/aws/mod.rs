//! EC2 through aws-sdk-ec2 (being written).
