"""AWS: the clients, the task store (DynamoDB), the queues (SQS), result files (S3),
provisioning, and the embedded AWS-compatible endpoint of the local profile."""
