//! WuKongIM binary protocol codec (sans-io). The codec lands with its own issue.
