"""Tests of secret-scanner's rules: python3 -m unittest (in this folder)."""

import unittest

import policy


def rules(problems):
    return [(p.rule_id, p.line) for p in problems]


class SecretScannerTest(unittest.TestCase):
    def test_keys_recognised_by_their_shape(self):
        code = ('AWS = "AKIAIOSFODNN7EXAMPLE"\n'
                'GH = "ghp_' + "a" * 36 + '"\n'
                'KEY = """-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"""\n')
        found = rules(policy.find_problems(code))
        self.assertIn((policy.AWS_KEY, 1), found)
        self.assertIn((policy.GITHUB_TOKEN, 2), found)
        self.assertIn((policy.PRIVATE_KEY, 3), found)

    def test_credentials_assigned_as_literals(self):
        code = ('db_password = "hunter2hunter2"\n'
                'connect(api_key="sk-live-0123456789")\n'
                'config = {"auth_token": "abcdefgh12345678"}\n'
                'password = os.environ["DB_PASSWORD"]\n'
                'token = "changeme"\n'
                'tokenizer = "bert-base-uncased"\n')
        self.assertEqual(rules(policy.find_problems(code)),
                         [(policy.CREDENTIAL, 1), (policy.CREDENTIAL, 2), (policy.CREDENTIAL, 3)])

    def test_a_key_assigned_to_a_secret_name_is_reported_once(self):
        found = policy.find_problems('token = "AKIAIOSFODNN7EXAMPLE"\n')
        self.assertEqual(rules(found), [(policy.AWS_KEY, 1)])
        # Another secret on the same line is still its own finding.
        found = policy.find_problems('c(key_id="AKIAIOSFODNN7EXAMPLE", secret="wJalrXUtnFEMI/K7MDENG")\n')
        self.assertEqual(rules(found), [(policy.AWS_KEY, 1), (policy.CREDENTIAL, 1)])

    def test_patterns_are_not_credentials(self):
        code = ('TOKEN_REGEX = r"[A-Za-z_]+"\n'
                'password_re = "^.{8,}$"\n'
                'token_shape = r"\\bgh[pousr]_\\w{36}"\n'
                'api_key_format = "(?P<id>[0-9a-f]+)"\n'
                'secret = "aB3+dE6/gH9=kL2"\n')
        self.assertEqual(rules(policy.find_problems(code)), [(policy.CREDENTIAL, 5)])

    def test_copyleft_headers(self):
        code = "# SPDX-License-Identifier: GPL-3.0-or-later\nx = 1\n"
        self.assertEqual(rules(policy.find_problems(code)), [(policy.COPYLEFT, 1)])
        self.assertEqual(policy.find_problems("# SPDX-License-Identifier: MIT\n"), [])

    def test_tests_are_scanned_too_and_say_so(self):
        found = policy.find_problems("x = 1\n", 'def test_x():\n    secret = "s3cr3t-value-1"\n')
        self.assertEqual(rules(found), [(policy.CREDENTIAL, 2)])
        self.assertIn("in the tests", found[0].message)

    def test_clean_and_unparsable_code(self):
        self.assertEqual(policy.find_problems("def add(a, b):\n    return a + b\n"), [])
        self.assertEqual(policy.find_problems("def f(:\n"), [])


if __name__ == "__main__":
    unittest.main()
