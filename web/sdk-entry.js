// The demo's entry into the official SDK (wukongimjssdk 1.0.4): its named exports live in
// lib/sdk.js (../shared/spec/JSSDK.md §1). Bundled as the global `WuKong`.
export { WKSDK, Channel, MessageText, ChannelTypePerson, ChannelTypeGroup } from 'wukongimjssdk/lib/sdk.js';
