//! Ansible export: the embedded task list as an inventory, a playbook, templates and variables.
