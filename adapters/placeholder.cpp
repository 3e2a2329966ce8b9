// Keeps the adapters library non-empty until its first source lands.
