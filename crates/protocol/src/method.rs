//! MCP method names the gateway and the bridge act on, as constants: the one place they are
//! spelled. Methods tether only forwards need no name here.

/// The handshake request.
pub const INITIALIZE: &str = "initialize";
/// Liveness check, either direction.
pub const PING: &str = "ping";
/// Call a tool.
pub const TOOLS_CALL: &str = "tools/call";
/// List the tools.
pub const TOOLS_LIST: &str = "tools/list";
/// Read a resource.
pub const RESOURCES_READ: &str = "resources/read";
/// List resource templates.
pub const RESOURCES_TEMPLATES_LIST: &str = "resources/templates/list";
/// Subscribe to a resource's updates.
pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
/// End a subscription.
pub const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
/// Get a prompt.
pub const PROMPTS_GET: &str = "prompts/get";
/// Argument completion.
pub const COMPLETION_COMPLETE: &str = "completion/complete";
/// Set the server's log level.
pub const LOGGING_SET_LEVEL: &str = "logging/setLevel";
/// Server→client: ask the user for input.
pub const ELICITATION_CREATE: &str = "elicitation/create";
/// Server→client: ask the client's model for a completion.
pub const SAMPLING_CREATE_MESSAGE: &str = "sampling/createMessage";
/// Server→client: list the client's roots.
pub const ROOTS_LIST: &str = "roots/list";
/// 2026-07-28: what the server supports, instead of a handshake.
pub const SERVER_DISCOVER: &str = "server/discover";
/// 2026-07-28: the stream that carries resource updates.
pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";

/// The client finished the handshake.
pub const NOTIFICATION_INITIALIZED: &str = "notifications/initialized";
/// Either side gives up on a request.
pub const NOTIFICATION_CANCELLED: &str = "notifications/cancelled";
/// Progress of a request, by its progress token.
pub const NOTIFICATION_PROGRESS: &str = "notifications/progress";
/// A subscribed resource changed.
pub const NOTIFICATION_RESOURCES_UPDATED: &str = "notifications/resources/updated";
/// 2026-07-28: a `subscriptions/listen` stream is established.
pub const NOTIFICATION_SUBSCRIPTIONS_ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";

/// A log message from the server.
pub const NOTIFICATION_MESSAGE: &str = "notifications/message";

/// The list kinds a server can announce changes of (`notifications/<kind>/list_changed`).
pub const LIST_KINDS: [&str; 3] = ["tools", "prompts", "resources"];

/// The list request of a kind (`tools` → `tools/list`).
pub fn list_of(kind: &str) -> String {
    format!("{kind}/list")
}

/// The kind a list request lists (`tools/list` → `tools`).
pub fn list_kind(method: &str) -> Option<&str> {
    method.strip_suffix("/list")
}

/// The notification that a kind's list changed (`tools` → `notifications/tools/list_changed`).
pub fn list_changed(kind: &str) -> String {
    format!("notifications/{kind}/list_changed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names() {
        assert_eq!(list_of("tools"), TOOLS_LIST);
        assert_eq!(list_kind(TOOLS_LIST), Some("tools"));
        assert_eq!(list_kind(RESOURCES_TEMPLATES_LIST), Some("resources/templates"));
        assert_eq!(list_kind(TOOLS_CALL), None);
        assert_eq!(list_changed("prompts"), "notifications/prompts/list_changed");
    }
}
