//! The websocket `/api/v1/ws`: what a page subscribes to and what the
//! master pushes (issue 10).
