"""Packaging for Firezone in Python.

``twisted.plugins`` is listed explicitly (it is a namespace shared with Twisted:
we ship only our plugin modules, never ``twisted/plugins/__init__.py``), and the
plugin cache ``dropin.cache`` is kept out of the wheel.
"""

from setuptools import find_packages, setup

setup(
    name="firezone-twisted",
    version="0.1.0",
    description="Zero-trust remote access: portal, relay, gateway and client on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*"]) + ["twisted.plugins"],  # noqa: RUF005
    package_data={"firezone": ["py.typed"], "": ["*.sql", "*.html", "*.c", "*.css"]},
    exclude_package_data={"twisted.plugins": ["dropin.cache"]},
    include_package_data=False,
    # The relay's XDP program is compiled by BCC at start, so its C source ships too.
    data_files=[("share/firezone/bpf", ["bpf/relay_xdp.c"])],
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "klein>=24.8",
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        "pynacl>=1.5",
        "cryptography>=42",
        "pyroute2>=0.7",
        "treq>=24.9",
        "prometheus_client>=0.20",
        "argon2-cffi>=23.1",
        "joserfc>=1.0",
        "jinja2>=3.1",
        "tzdata",
    ],
    extras_require={
        "test": ["hypothesis>=6.100"],
        "dev": [
            "hypothesis>=6.100",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
            "tox>=4",
            "build>=1.2",
            "py-spy>=0.3",  # bench/tunnel.py --profile
        ],
    },
    entry_points={"console_scripts": ["firezone-ctl = firezone.portal.ctl:main"]},
    zip_safe=False,
)
