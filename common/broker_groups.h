// Broker groups, as a VDA's ListOfDDCs (seed 001): "(http://b1:8080
// http://b2:8080)(http://b3:8080)" is two groups; an agent registers with a random broker of the
// first group and tries the next group only when every broker of the first is down. A list without
// parentheses is one group. Shared by the broker (--agent-brokers, the registration answer) and
// atrium-agent (--brokers).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace atrium {

using BrokerGroups = std::vector<std::vector<std::string>>;

// nullopt on unbalanced or nested parentheses, an empty group or no broker at all.
inline std::optional<BrokerGroups> parse_broker_groups(const std::string& text) {
  BrokerGroups out;
  std::vector<std::string> group;
  std::string word;
  bool open = false, any_paren = false;
  auto flush_word = [&] {
    if (!word.empty()) group.push_back(word);
    word.clear();
  };
  for (char c : text) {
    if (c == '(') {
      if (open) return std::nullopt;
      flush_word();
      if (!group.empty()) return std::nullopt;  // "a (b)": mixed forms
      open = any_paren = true;
    } else if (c == ')') {
      if (!open) return std::nullopt;
      flush_word();
      if (group.empty()) return std::nullopt;
      out.push_back(group);
      group.clear();
      open = false;
    } else if (c == ' ' || c == '\t' || c == ',' || c == '\n') {
      flush_word();
    } else {
      if (any_paren && !open) return std::nullopt;  // text outside a group
      word.push_back(c);
    }
  }
  if (open) return std::nullopt;
  flush_word();
  if (!group.empty()) out.push_back(group);
  if (out.empty()) return std::nullopt;
  return out;
}

inline std::string format_broker_groups(const BrokerGroups& g) {
  std::string s;
  for (const auto& group : g) {
    s += "(";
    for (size_t i = 0; i < group.size(); ++i) s += (i ? " " : "") + group[i];
    s += ")";
  }
  return s;
}

}  // namespace atrium
