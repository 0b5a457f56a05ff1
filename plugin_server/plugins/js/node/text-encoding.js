// Injected into the `url` bundle: whatwg-url reads TextEncoder/TextDecoder as globals, which a
// bare V8 isolate lacks; @exodus/bytes provides spec-conformant ones.
export { TextDecoder, TextEncoder } from "@exodus/bytes/encoding.js";
