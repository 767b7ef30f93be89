using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Dingo;

/// <summary>An IP address or CIDR network as operators write it (`dingo.cell.admin-networks`), in its one canonical form.</summary>
public static class IpNetworks
{

    /// <summary>"10.0.0.0/24" or "10.0.0.5" in canonical CIDR form; throws with the offending text otherwise.</summary>
    public static string Parse(string text)
    {
        var slash = text.IndexOf('/', StringComparison.Ordinal);
        var addressText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addressText.Trim(), out var ip))
            throw new ArgumentException($"'{text}' is not an IP address or CIDR network");
        var max = ip.AddressFamily == AddressFamily.InterNetworkV6 ? 128 : 32;
        var bits = max;
        if (slash >= 0 && (!int.TryParse(text[(slash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out bits) || bits > max))
            throw new ArgumentException($"'{text}' has no valid prefix length (0-{max})");
        return $"{Mask(ip, bits)}/{bits.ToString(CultureInfo.InvariantCulture)}";
    }


    private static IPAddress Mask(IPAddress ip, int bits)
    {
        var bytes = ip.GetAddressBytes();
        for (var i = 0; i < bytes.Length; i++)
        {
            var keep = Math.Clamp(bits - i * 8, 0, 8);
            bytes[i] &= (byte)(0xFF << (8 - keep));
        }
        return new IPAddress(bytes);
    }
}
