// User names: NFKC normalisation and the rules a new name must meet (ICU: Normalizer2 and
// the UTS #39 spoof checker). Pure functions of their input.
//
// The rules, after NFKC: 1 to 128 bytes; only letters (Unicode L*), combining marks (M*),
// decimal digits (Nd) and the four ASCII characters `.` `_` `-` `@`; the first character a
// letter or digit; the letters of one script, or of the combinations UTS #39 calls "highly
// restrictive" (Latin with Han, Hiragana and Katakana; Han with Bopomofo; Han with Hangul);
// digits of one numbering system; no invisible or repeated combining marks. So spaces,
// control and format characters (zero-width spaces and joiners, bidi overrides) are refused,
// and so is `аdmin` with a Cyrillic `а`; `иван` and `张伟` are fine.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace atrium::domain {

// The NFKC form of a name (e.g. fullwidth `ａｄｍｉｎ` -> `admin`). The input must be valid
// UTF-8; invalid_argument otherwise.
Result<std::string> normalize_user_name(std::string_view name);

// OK when `name` is NFKC-normalised and meets the rules above; invalid_argument with reason
// `invalid_name` (and the field `field`) otherwise.
Status validate_user_name(const std::string& field, const std::string& name);

// The UTS #39 skeleton: two names with the same skeleton are confusable (`roman` and
// `rornan`, Latin `coco` and Cyrillic `сосо`).
std::string user_name_skeleton(const std::string& name);

}  // namespace atrium::domain
