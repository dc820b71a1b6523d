//! Terraform export: the resource graph as HCL (versions.tf, variables.tf, main.tf, outputs.tf).
