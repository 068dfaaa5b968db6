//! The smtpd.conf language: lexer, PEG grammar, checks, and the compiled configuration.
