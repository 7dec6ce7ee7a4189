//! The broker's wire decoder (requests, with their validation, and
//! responses): never a panic, whatever the bytes; whatever decodes encodes
//! again and decodes to the same message.
#![no_main]

use dmabroker::proto::{decode_request, decode_response, encode_request, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let bytes = encode_request(&request).expect("a decoded request encodes");
        assert_eq!(decode_request(&bytes).expect("and decodes again"), request);
    }
    if let Ok(response) = decode_response(data) {
        let bytes = encode_response(&response).expect("a decoded response encodes");
        assert_eq!(decode_response(&bytes).expect("and decodes again"), response);
    }
});
