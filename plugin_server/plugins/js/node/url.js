// Node's `url` module (WHATWG URL and URLSearchParams, from whatwg-url, the reference
// implementation) and the TextEncoder/TextDecoder globals (from @exodus/bytes).
(globalThis.__nodeLibraries ||= {}).url = () => {
  const { URL, URLSearchParams } = require("whatwg-url");
  return { URL, URLSearchParams, TextEncoder, TextDecoder };
};
