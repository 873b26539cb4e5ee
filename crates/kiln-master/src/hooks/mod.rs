//! Webhooks from forges (GitHub, GitLab, Gitea/Forgejo): signature checks
//! over the raw body, and the push and tag events they carry.
