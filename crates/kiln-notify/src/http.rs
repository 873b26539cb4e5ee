//! Slack (and Mattermost) incoming webhooks, and signed plain webhooks
//! (being written).
