// The SDK uses Node's global `Buffer` (MessageStream.decodeJSON); browsers get the npm
// `buffer` package in its place.
export { Buffer } from 'buffer';
