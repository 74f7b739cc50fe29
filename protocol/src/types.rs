//! Protocol enumerations as plain `u8` constants (PROTOCOL.md §4), so they can be written
//! into packets and compared with wire bytes without conversions.

/// Reason codes (PROTOCOL.md §4.2). Keep every number: clients display them.
pub mod reason {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Success (CONNACK, SENDACK). Not 0.
    pub const SUCCESS: u8 = 1;
    /// Token missing or wrong, bad client key.
    pub const AUTH_FAIL: u8 = 2;
    /// Sender is not a subscriber of the channel.
    pub const SUBSCRIBER_NOT_EXIST: u8 = 3;
    /// Sender is blacklisted.
    pub const IN_BLACKLIST: u8 = 4;
    /// Channel does not exist.
    pub const CHANNEL_NOT_EXIST: u8 = 5;
    /// Cluster: user not on node.
    pub const USER_NOT_ON_NODE: u8 = 6;
    /// Sender offline.
    pub const SENDER_OFFLINE: u8 = 7;
    /// Bad msgKey (the reference reports 9 instead).
    pub const MSG_KEY_ERROR: u8 = 8;
    /// SEND payload failed the msgKey check or decryption.
    pub const PAYLOAD_DECODE_ERROR: u8 = 9;
    /// Cluster forwarding failed.
    pub const FORWARD_SEND_PACKET_ERROR: u8 = 10;
    /// Not allowed to send.
    pub const NOT_ALLOW_SEND: u8 = 11;
    /// DISCONNECT reason when a connection is kicked.
    pub const CONNECT_KICK: u8 = 12;
    /// Channel has a whitelist and the sender is not on it.
    pub const NOT_IN_WHITELIST: u8 = 13;
    /// Token lookup failed.
    pub const QUERY_TOKEN_ERROR: u8 = 14;
    /// Internal failure (storage).
    pub const SYSTEM_ERROR: u8 = 15;
    /// Bad channel id.
    pub const CHANNEL_ID_ERROR: u8 = 16;
    /// Cluster.
    pub const NODE_MATCH_ERROR: u8 = 17;
    /// Cluster.
    pub const NODE_NOT_MATCH: u8 = 18;
    /// Channel (or user) banned.
    pub const BAN: u8 = 19;
    /// Unsupported header.
    pub const NOT_SUPPORT_HEADER: u8 = 20;
    /// CONNECT without a client key while encryption is on.
    pub const CLIENT_KEY_IS_EMPTY: u8 = 21;
    /// Rate limited.
    pub const RATE_LIMIT: u8 = 22;
    /// Channel type not supported.
    pub const NOT_SUPPORT_CHANNEL_TYPE: u8 = 23;
    /// Channel disbanded.
    pub const DISBAND: u8 = 24;
    /// Sender's own person channel has `send_ban`.
    pub const SEND_BAN: u8 = 25;
}

/// Device flags (PROTOCOL.md §4.3): the code's numbering, not the docs'.
pub mod device_flag {
    /// Mobile app.
    pub const APP: u8 = 0;
    /// Web (the JS SDK's default).
    pub const WEB: u8 = 1;
    /// Desktop.
    pub const PC: u8 = 2;
    /// Internal system device.
    pub const SYSTEM: u8 = 99;
}

/// Channel types (PROTOCOL.md §4.5).
pub mod channel_type {
    /// 1:1 chat, stored under the combined id.
    pub const PERSON: u8 = 1;
    /// Group.
    pub const GROUP: u8 = 2;
    /// Obsolete customer service.
    pub const CUSTOMER_SERVICE: u8 = 3;
    /// Community.
    pub const COMMUNITY: u8 = 4;
    /// Community topic.
    pub const COMMUNITY_TOPIC: u8 = 5;
    /// Public info channel: anyone may send.
    pub const INFO: u8 = 6;
    /// Data: no conversations.
    pub const DATA: u8 = 7;
    /// Temp: explicit subscriber list.
    pub const TEMP: u8 = 8;
    /// Live: no conversations.
    pub const LIVE: u8 = 9;
    /// Visitors.
    pub const VISITORS: u8 = 10;
    /// AI agent 1:1.
    pub const AGENT: u8 = 11;
    /// AI agent group.
    pub const AGENT_GROUP: u8 = 12;
}
