#include "domain/user_names.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/uspoof.h>
#include <unicode/utf8.h>

#include <memory>

namespace atrium::domain {

namespace {

struct SpoofDeleter {
  void operator()(USpoofChecker* sc) const { uspoof_close(sc); }
};

// One configured checker for the process: ICU documents its check and skeleton functions as
// safe to call from several threads on one instance once configured.
const USpoofChecker* checker() {
  static const std::unique_ptr<USpoofChecker, SpoofDeleter> sc = [] {
    UErrorCode st = U_ZERO_ERROR;
    USpoofChecker* c = uspoof_open(&st);
    uspoof_setChecks(c, USPOOF_RESTRICTION_LEVEL | USPOOF_INVISIBLE | USPOOF_MIXED_NUMBERS, &st);
    uspoof_setRestrictionLevel(c, USPOOF_HIGHLY_RESTRICTIVE);
    return std::unique_ptr<USpoofChecker, SpoofDeleter>(U_SUCCESS(st) ? c : nullptr);
  }();
  return sc.get();
}

Error bad_name(const std::string& field, const std::string& why) {
  return Error{Code::invalid_argument, field + " " + why, "invalid_name", {{field, why}}};
}

bool letter_or_digit(int8_t type) {
  switch (type) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
    case U_DECIMAL_DIGIT_NUMBER:
      return true;
    default:
      return false;
  }
}

bool mark(int8_t type) {
  return type == U_NON_SPACING_MARK || type == U_ENCLOSING_MARK || type == U_COMBINING_SPACING_MARK;
}

}  // namespace

Result<std::string> normalize_user_name(std::string_view name) {
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* nfkc = icu::Normalizer2::getNFKCInstance(st);
  if (U_FAILURE(st)) return Error::make(Code::internal, "ICU NFKC data is missing");
  icu::UnicodeString in = icu::UnicodeString::fromUTF8(
      icu::StringPiece(name.data(), static_cast<int32_t>(name.size())));
  if (in.isBogus()) return invalid("the name is not valid UTF-8", "invalid_name");
  icu::UnicodeString out = nfkc->normalize(in, st);
  if (U_FAILURE(st)) return invalid("the name cannot be normalised", "invalid_name");
  std::string s;
  out.toUTF8String(s);
  return s;
}

Status validate_user_name(const std::string& field, const std::string& name) {
  if (name.empty() || name.size() > 128) return bad_name(field, "must be 1 to 128 bytes");
  auto norm = normalize_user_name(name);
  if (!norm.ok()) return norm.error();
  if (*norm != name) return bad_name(field, "must be in Unicode normalisation form NFKC");
  const auto* p = reinterpret_cast<const uint8_t*>(name.data());
  int32_t i = 0, n = static_cast<int32_t>(name.size());
  bool first = true;
  while (i < n) {
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0) return bad_name(field, "must be valid UTF-8");
    auto type = static_cast<int8_t>(u_charType(c));
    bool ok = letter_or_digit(type) ||
              (!first && (mark(type) || c == '.' || c == '_' || c == '-' || c == '@'));
    if (!ok) {
      return bad_name(field, first ? "must start with a letter or digit"
                                   : "may hold only letters, digits, combining marks and . _ - @");
    }
    first = false;
  }
  const USpoofChecker* sc = checker();
  if (sc == nullptr) return Error::make(Code::internal, "ICU spoof checker data is missing");
  UErrorCode st = U_ZERO_ERROR;
  int32_t r = uspoof_checkUTF8(sc, name.data(), n, nullptr, &st);
  if (U_FAILURE(st)) return bad_name(field, "cannot be checked");
  if (r & USPOOF_RESTRICTION_LEVEL) {
    return bad_name(field, "mixes scripts (letters that look alike from different alphabets)");
  }
  if (r & USPOOF_MIXED_NUMBERS)
    return bad_name(field, "mixes digits of different numbering systems");
  if (r != 0) return bad_name(field, "has invisible or repeated combining marks");
  return Status::Ok();
}

std::string user_name_skeleton(const std::string& name) {
  const USpoofChecker* sc = checker();
  if (sc == nullptr) return name;
  UErrorCode st = U_ZERO_ERROR;
  std::string out(name.size() * 3 + 16, '\0');
  int32_t len = uspoof_getSkeletonUTF8(sc, 0, name.data(), static_cast<int32_t>(name.size()),
                                       out.data(), static_cast<int32_t>(out.size()), &st);
  if (st == U_BUFFER_OVERFLOW_ERROR) {
    out.assign(static_cast<size_t>(len) + 1, '\0');
    st = U_ZERO_ERROR;
    len = uspoof_getSkeletonUTF8(sc, 0, name.data(), static_cast<int32_t>(name.size()), out.data(),
                                 static_cast<int32_t>(out.size()), &st);
  }
  if (U_FAILURE(st)) return name;
  out.resize(static_cast<size_t>(len));
  return out;
}

}  // namespace atrium::domain
